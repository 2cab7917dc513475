"""What people look at: figures, the HTML gallery, the attribute browser widgets, user studies."""
