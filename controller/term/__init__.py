"""The controller's terminal layer: what a run looks like on a screen.

Output modes, progress, summaries and the interactive shell render the library's
events; the library (`shoal.controller`) never imports this package.
"""
