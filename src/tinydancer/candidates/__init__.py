"""The seed's candidate scorer: features, conformal uncertainty and the :class:`Router`."""
