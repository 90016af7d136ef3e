"""Ready-made experiments with a known gold reward, and simulated annotators. No algorithms of their own."""
