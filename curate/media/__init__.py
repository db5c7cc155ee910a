"""Media code shared by curation stages and the shard writer: image and video references, header probes, the
one reduced decode per image (image_facts), content identity (hashes)."""
