"""cptcore: continual pretraining and SFT of LLaMA-family models, pluggable with pluggy.

Public API (importing it never imports torch, transformers or colossalai)::

    from cptcore import hookimpl, make_plugin_manager, StrategySpec, ChatTemplate
"""

from __future__ import annotations

__version__ = "0.1.0"  # before the imports: submodules import it at their top

from .errors import ConfigError, CptError, DataError, PluginError, RegistryError
from .hookspecs import PROJECT, hookimpl
from .plugins import make_plugin_manager
from .specs import Capabilities, ChatTemplate, LoggerSpec, NoiseSpec, ObjectiveSpec, PackerSpec, Segment, StrategySpec

__all__ = [
    "PROJECT",
    "ChatTemplate",
    "ConfigError",
    "CptError",
    "DataError",
    "Capabilities",
    "LoggerSpec",
    "NoiseSpec",
    "ObjectiveSpec",
    "PackerSpec",
    "PluginError",
    "RegistryError",
    "Segment",
    "StrategySpec",
    "__version__",
    "hookimpl",
    "make_plugin_manager",
]
