package monitor

import (
	"context"
	"errors"
	"sync/atomic"
	"testing"
	"time"
)

// failing fails its first runs, then emits one event and waits.
type failing struct {
	runs  atomic.Int32
	fails int32
}

func (f *failing) Name() string { return "failing" }
func (f *failing) Run(ctx context.Context, events chan<- Event) error {
	if f.runs.Add(1) <= f.fails {
		return errors.New("broken")
	}
	if err := send(ctx, events, Event{Type: Start, PU: PU{ID: "from-failing"}, Source: "failing"}); err != nil {
		return nil
	}
	<-ctx.Done()
	return nil
}

// oneShot emits one PU's Start, then waits.
type oneShot struct{ name, id string }

func (o oneShot) Name() string { return o.name }
func (o oneShot) Run(ctx context.Context, events chan<- Event) error {
	if send(ctx, events, Event{Type: Start, PU: PU{ID: o.id}, Source: o.name}) == nil {
		<-ctx.Done()
	}
	return nil
}

func TestRunAll(t *testing.T) {
	a, b := oneShot{"a", "pa"}, oneShot{"b", "pb"}
	f := &failing{fails: 2}
	ctx, cancel := context.WithCancel(context.Background())
	events := make(chan Event)
	done := make(chan struct{})
	go func() { RunAll(ctx, events, nil, 10*time.Millisecond, a, b, f); close(done) }()

	got := map[string]string{}
	for len(got) < 3 {
		select {
		case ev := <-events:
			got[ev.PU.ID] = ev.Source
		case <-time.After(5 * time.Second):
			t.Fatalf("events so far %v", got)
		}
	}
	want := map[string]string{"pa": "a", "pb": "b", "from-failing": "failing"}
	for id, src := range want {
		if got[id] != src {
			t.Errorf("event %s from %q, want %q", id, got[id], src)
		}
	}
	if n := f.runs.Load(); n != 3 {
		t.Errorf("failing monitor ran %d times, want 3 (2 failures, restarted)", n)
	}
	cancel()
	select {
	case <-done:
	case <-time.After(5 * time.Second):
		t.Fatal("RunAll did not return after cancel")
	}
}
