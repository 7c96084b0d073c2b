"""Simulated OpenAI-compatible models and the bundled ticket-routing task they answer."""
