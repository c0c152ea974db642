"""DiVE Studio: diffusion-based visible-infrared data expansion for person re-identification.

Stages live in their own sub-packages (data -> base -> train -> generate -> export -> reid);
the command line (`dive.cli`) and the studio (`app.py`) only compose them.
"""

__version__ = "0.1.0"
