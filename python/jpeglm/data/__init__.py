"""Data: image and clip sources, preparation into token shards, the shard index, the shard
dataset, the bundled assets."""
