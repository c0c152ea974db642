"""Visible-infrared ReID: standard evaluation protocols (and, later, the ReID training recipes)."""
