"""The worked solutions of the exercises, in the style of the library."""
