package fleet

import (
	"maps"
	"slices"
	"sync"
)

func slicesSorted(set map[string]bool) []string { return slices.Sorted(maps.Keys(set)) }

// converging owns the apply goroutines.
type converging struct{ wg sync.WaitGroup }

func (c *converging) start(fn func()) { c.wg.Go(fn) }
func (c *converging) wait()           { c.wg.Wait() }
