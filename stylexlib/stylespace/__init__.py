"""Real images into the generator's StyleSpace (inversion) and fast edited renders."""
