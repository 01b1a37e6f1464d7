"""Model building and the export format (no distributed code here).

Heavy imports (torch, transformers, peft) happen inside the submodules: `from arena_dist.models.config import
ModelConfig` stays light.
"""
