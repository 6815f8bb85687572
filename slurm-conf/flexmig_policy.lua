-- flexmig size-aware policy: the one place its parameters live. Read by job_submit.lua
-- and cli_filter.lua (same directory). `flexmig-gres-helper gres-conf --policy PATH` writes
-- it for a node; on a cluster of several node kinds, use the values of the smallest node.
-- This example: two H100-80GB GPUs, each 6 x 1g.10gb + 1 x 1g.20gb.
return {
  small_type = "1g.10gb",        -- GRES type of the small leaves
  double_type = "1g.20gb",       -- GRES type of the double leaves (nil: none, e.g. A30)
  leaves_per_node = 14,          -- every leaf of a node
  small_leaves_per_node = 12,    -- the small ones
  single_prefers_double = true,  -- mig:1 takes any leaf, doubles first (the helper's GRES order)
}
