"""Small helpers shared by every stage (I/O, hashing, seeding, ranking metrics); the lowest layer."""
