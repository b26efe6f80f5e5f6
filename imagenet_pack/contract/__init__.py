"""The contract both wings share: the on-disk format (``format``, specified in docs/FORMAT.md), where each
piece of a database is and what it is called (``layout``), the fences around LMDB's file (``lmdbfile``) and
this process's readers of it (``shardfiles``), the conversion locks (``shardlock``), and the decode policy
(``codec``, ``jpegstream``, ``probe``). The converter writes what it says and the reader reads it; neither
wing imports the other. Nothing is imported here: import from the modules."""
