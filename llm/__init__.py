"""Text generation: the `Generator` protocol, our own inference engine and the reference backends."""
