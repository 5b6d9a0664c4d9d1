"""The Gradio demo: ``build_demo(pipeline)`` builds the UI, ``handlers`` connects it to the pipeline.

The model is loaded once by ``app.py``; nothing here imports torch or builds a network.
"""

from .handlers import DemoHandlers, Reference, load_references
from .ui import CSS, build_demo

__all__ = ["CSS", "DemoHandlers", "Reference", "build_demo", "load_references"]
