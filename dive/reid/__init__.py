"""Visible-infrared ReID: standard evaluation protocols and the AGW / CAJ training recipes."""
