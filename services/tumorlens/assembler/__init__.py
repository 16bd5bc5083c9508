"""Study assembly: from instances to one queued job per complete study version."""
