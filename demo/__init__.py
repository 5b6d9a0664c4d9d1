"""The Gradio demo: ``build_demo(pipeline)`` builds the UI (``ui.py``); ``handlers.py`` holds its events.

``launch`` loads the model and the parser once (``app.py`` calls its ``create_app``); no other module
here builds a network. Modules: ``launch`` loading and fallbacks · ``ui`` layout and wiring ·
``handlers`` the events · ``canvas`` canvas <-> class ids · ``uploads`` every image that enters ·
``results`` result PNGs and the variant strip · ``references`` reference photos. The developer tools
around the demo (benchmarks, screenshots) are in ``devtools/``.
"""

from .handlers import DemoHandlers
from .references import Reference, load_references
from .ui import CSS, build_demo

__all__ = ["CSS", "DemoHandlers", "Reference", "build_demo", "load_references"]
