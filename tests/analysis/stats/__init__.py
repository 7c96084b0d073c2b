"""Tests of analysis.stats against independent references and by simulated coverage."""
