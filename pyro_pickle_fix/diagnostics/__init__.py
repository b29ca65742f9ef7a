"""Diagnostics: is saving a guide safe here (``check``), is saving *this* object
safe (``audit``), and the snapshot of a live object graph both use.  Never loaded
by activation or by a save."""
