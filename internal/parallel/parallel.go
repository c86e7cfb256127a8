// Package parallel runs independent iterations of a loop on every CPU.
package parallel

import (
	"runtime"
	"sync"
)

// minPerWorker is the fewest iterations worth a goroutine of their own:
// below it, For runs the loop on the caller's goroutine.
const minPerWorker = 256

// For calls f(i) for every i in [0, n), splitting the range into
// contiguous chunks run concurrently, one per CPU (GOMAXPROCS), and returns
// when all have returned. f must be safe to call concurrently for distinct
// i. Small loops run on the caller's goroutine.
func For(n int, f func(i int)) {
	workers := min(runtime.GOMAXPROCS(0), n/minPerWorker)
	if workers <= 1 {
		for i := range n {
			f(i)
		}
		return
	}
	var wg sync.WaitGroup
	chunk := (n + workers - 1) / workers
	for start := 0; start < n; start += chunk {
		end := min(start+chunk, n)
		wg.Go(func() {
			for i := start; i < end; i++ {
				f(i)
			}
		})
	}
	wg.Wait()
}
