//! The hostile-input suite, caches and files: folders others can write, forged entries, symlinks, temporary files.
