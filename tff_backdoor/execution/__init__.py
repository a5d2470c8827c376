"""Where TFF computations run: the local and remote execution contexts and their workers."""
