package metrics

// NoRecent makes m fold and look up every HTTP record's labels (no
// recent cache): the reference the cache is compared with.
func NoRecent(m *Metrics) { m.noRecent = true }

// OneRecentSlot puts every HTTP record in the same recent slot, so that
// records of different label sets meet there.
func OneRecentSlot(m *Metrics) { m.recentMask = 0 }
