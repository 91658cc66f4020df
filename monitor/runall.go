package monitor

import (
	"context"
	"log/slog"
	"sync"
	"time"
)

// RunAll runs every monitor into events until ctx is done, and returns when
// all have returned. A monitor whose Run fails is logged and restarted after
// a pause (restartDelay), so one broken source never stops the others.
func RunAll(ctx context.Context, events chan<- Event, log *slog.Logger, restartDelay time.Duration, monitors ...Monitor) {
	if log == nil {
		log = slog.Default()
	}
	var wg sync.WaitGroup
	for _, m := range monitors {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for {
				err := m.Run(ctx, events)
				if ctx.Err() != nil {
					return
				}
				log.Error("monitor stopped; restarting", "monitor", m.Name(), "error", err, "in", restartDelay)
				select {
				case <-time.After(restartDelay):
				case <-ctx.Done():
					return
				}
			}
		}()
	}
	wg.Wait()
}
