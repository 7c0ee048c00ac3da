"""Domain plugins of the workbench (registered through the ``workbench.domains`` entry points)."""
