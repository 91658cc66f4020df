package identity

import (
	"errors"
	"fmt"
	"strings"
	"unicode/utf8"
)

// ReservedPrefix starts every reserved key: tags that trireme or a trusted
// orchestrator integration sets (@sys:image, @sys:namespace, @ns:team, ...).
// A workload's own labels can never carry one, or it could claim another
// workload's identity.
const ReservedPrefix = "@"

// SysPrefix starts the keys of system tags, which trireme sets itself.
const SysPrefix = ReservedPrefix + "sys:"

// IsReserved reports whether key is reserved (starts with '@').
func IsReserved(key string) bool { return strings.HasPrefix(key, ReservedPrefix) }

// Bounds of a label or tag: they travel signed in every token of the PU.
const (
	MaxKey   = 253
	MaxValue = 1024
)

// CheckLabel validates one label (or, with reserved, an orchestrator tag,
// whose key may be reserved). A key is non-empty, has no '=' (tags travel as
// key=value), and is reserved only when reserved is set; key and value are
// UTF-8 without control characters (NUL, newline, ...) and bounded. The
// control API refuses a bad label with the error; the Docker monitor, which
// cannot refuse a container, drops it and logs why.
func CheckLabel(key, value string, reserved bool) error {
	switch {
	case strings.TrimSpace(key) == "":
		return errors.New("empty key")
	case strings.Contains(key, "="):
		return fmt.Errorf("key %q contains '='", key)
	case !reserved && IsReserved(key):
		return fmt.Errorf("key %q: keys starting with '@' are reserved for trireme", key)
	case len(key) > MaxKey:
		return fmt.Errorf("key of %d bytes (at most %d)", len(key), MaxKey)
	case len(value) > MaxValue:
		return fmt.Errorf("value of key %q: %d bytes (at most %d)", key, len(value), MaxValue)
	}
	for _, f := range [...]struct{ what, s string }{{"key", key}, {"value", value}} {
		if !utf8.ValidString(f.s) {
			return fmt.Errorf("%s %q is not UTF-8", f.what, f.s)
		}
		for _, r := range f.s {
			if r < 0x20 || r == 0x7f || (r >= 0x80 && r < 0xa0) {
				return fmt.Errorf("%s %q contains a control character (%U)", f.what, f.s, r)
			}
		}
	}
	return nil
}

// UserLabels returns the entries of m whose keys are not reserved: the
// labels a workload itself may carry.
func UserLabels(m map[string]string) map[string]string {
	out := make(map[string]string, len(m))
	for k, v := range m {
		if !IsReserved(k) {
			out[k] = v
		}
	}
	return out
}
