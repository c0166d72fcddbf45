"""Lightning modules, data modules and callbacks for mixerlab."""
