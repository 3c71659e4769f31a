"""Lightning modules, the three training stages, run directories and configs."""
