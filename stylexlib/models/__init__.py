"""StylEx networks: generator with explicit StyleSpace, encoder, conditional discriminator."""
from .discriminator import Discriminator, FeatureDiscriminator
from .encoder import Encoder
from .stylegan2 import Generator, MappingNetwork, SynthesisState, channels_at

__all__ = ["Discriminator", "FeatureDiscriminator", "Encoder", "Generator", "MappingNetwork", "SynthesisState", "channels_at"]
