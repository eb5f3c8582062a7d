"""Applications on top of the core: closed-loop evaluation in the simulator and the end-to-end demo."""
