"""``modalvol://<volume>/<path>``: redun Files and Dirs on Modal Volumes that stay cached.

- ``paths``: the URLs, and the Volumes a job's arguments name.
- ``stores``: where a process reaches a Volume's files (``VolumeStore``); a Volume that is a
  directory here (``DirectoryStore``: the local backend's, or one mounted in a container).
  Modal's Volume API is ``backends/modal/volume_files.py``.
- ``call_volumes``: a call's Volumes (mounted ones reloaded before use and committed after
  writes), and the mounts and access a job's call carries.
- ``filesystem``: the redun ``FileSystem`` for the scheme, registered with the executor type.
"""

SCHEME = "modalvol"
