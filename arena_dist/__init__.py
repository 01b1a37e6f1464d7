"""arena_dist: Chatbot Arena preference predictors trained by distillation at cluster scale.

Heavy dependencies (torch, deepspeed, ray) are imported inside the modules that need them, never here.
"""

__version__ = "0.1.0"
