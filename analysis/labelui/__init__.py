"""The web page people label with: blinded outputs, keyboard shortcuts, labels into the lake."""

from analysis.labelui.app import create_labelui_app

__all__ = ["create_labelui_app"]
