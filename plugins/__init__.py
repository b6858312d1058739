"""fewlabel.plugins: encoders, losses, heads, LightningModules and the gather + clustering primitives."""
