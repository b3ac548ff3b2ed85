"""CHORD's hypernetworks: device profiles, the networks, their relaxation and cloud training."""
