package netsetup

import (
	"errors"
	"os"
	"path/filepath"
	"testing"
)

func TestRaiseBacklog(t *testing.T) {
	tests := []struct {
		name          string
		file          string // "" : no file
		min           int
		before, after int
		want          string // file content after
		err           bool
		hidden        bool
	}{
		{name: "raised", file: "1000\n", min: 4000, before: 1000, after: 4000, want: "4000\n"},
		{name: "never lowered", file: "8192\n", min: 4000, before: 8192, after: 8192, want: "8192\n"},
		{name: "equal", file: "4000", min: 4000, before: 4000, after: 4000, want: "4000"},
		{name: "hidden in a namespace", min: 10, hidden: true},
		{name: "garbage", file: "lots\n", min: 10, err: true, want: "lots\n"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			path := filepath.Join(t.TempDir(), "netdev_max_backlog")
			if tt.file != "" {
				if err := os.WriteFile(path, []byte(tt.file), 0o644); err != nil {
					t.Fatal(err)
				}
			}
			before, after, err := RaiseBacklog(path, tt.min)
			if tt.hidden {
				if !errors.Is(err, ErrBacklogHidden) {
					t.Fatalf("err = %v, want ErrBacklogHidden", err)
				}
				return
			}
			if (err != nil) != tt.err {
				t.Fatalf("err = %v, want error %v", err, tt.err)
			}
			if !tt.err && (before != tt.before || after != tt.after) {
				t.Errorf("before, after = %d, %d; want %d, %d", before, after, tt.before, tt.after)
			}
			if b, _ := os.ReadFile(path); string(b) != tt.want {
				t.Errorf("file = %q, want %q", b, tt.want)
			}
		})
	}
}
