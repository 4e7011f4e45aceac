"""Where and how the work runs: several processes (distributed), big models over devices (placement), and timing
that compares two things fairly on a shared machine (timing)."""
