"""The application around the models: training on N-th Farthest, run folders, the command line."""
