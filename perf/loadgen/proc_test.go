package loadgen

import (
	"testing"
	"time"
)

func TestParseStatCPU(t *testing.T) {
	for _, tc := range []struct {
		name string
		stat string
		want time.Duration
		ok   bool
	}{
		{"plain", "42 (trireme) S 1 42 42 0 -1 4194560 100 0 0 0 150 25 0 0 20 0 9 0 100 0 0", 1750 * time.Millisecond, true},
		{"name with spaces and parens", "7 (a) b (c)) R 1 7 7 0 -1 0 0 0 0 0 3 4 0 0 20 0 1 0", 70 * time.Millisecond, true},
		{"zero", "1 (init) S 0 1 1 0 -1 0 0 0 0 0 0 0 0 0", 0, true},
		{"no name", "1 init S 0", 0, false},
		{"truncated", "1 (init) S 0 1 1 0 -1 0 0 0 0", 0, false},
		{"not a number", "1 (init) S 0 1 1 0 -1 0 0 0 0 0 x 0 0 0", 0, false},
		{"negative", "1 (init) S 0 1 1 0 -1 0 0 0 0 0 -5 0 0 0", 0, false},
		{"empty", "", 0, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got, err := parseStatCPU([]byte(tc.stat))
			if (err == nil) != tc.ok {
				t.Fatalf("err = %v, want ok %v", err, tc.ok)
			}
			if got != tc.want {
				t.Fatalf("got %v, want %v", got, tc.want)
			}
		})
	}
}

func TestStatusKB(t *testing.T) {
	status := "Name:\tx\nVmHWM:\t   2048 kB\nVmRSS:\t1024 kB\nVmBad:\t12 MB\nVmNaN:\tabc kB\n"
	for _, tc := range []struct {
		key  string
		want uint64
		ok   bool
	}{
		{"VmHWM:", 2048 << 10, true},
		{"VmRSS:", 1024 << 10, true},
		{"VmBad:", 0, false},
		{"VmNaN:", 0, false},
		{"VmSwap:", 0, false},
	} {
		t.Run(tc.key, func(t *testing.T) {
			got, err := statusKB([]byte(status), tc.key)
			if (err == nil) != tc.ok || got != tc.want {
				t.Fatalf("statusKB(%s) = %d, %v; want %d, ok %v", tc.key, got, err, tc.want, tc.ok)
			}
		})
	}
}
