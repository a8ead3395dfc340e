"""Line protocol appended to a local file (README.md beside this file documents every option)."""
