"""StylEx networks: generator with explicit StyleSpace, encoder, conditional discriminator."""
from stylexlib.gan.discriminator import Discriminator
from stylexlib.gan.encoder import Encoder
from stylexlib.gan.generator import Generator, MappingNetwork, SynthesisState, channels_at

__all__ = ["Discriminator", "Encoder", "Generator", "MappingNetwork", "SynthesisState", "channels_at"]
