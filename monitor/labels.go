package monitor

import (
	"errors"
	"fmt"
	"strings"
	"unicode/utf8"
)

// Bounds of a label or tag: they travel signed in every token of the PU.
const (
	MaxLabelKey   = 253
	MaxLabelValue = 1024
)

// CheckLabel validates one label (or, with reserved, an orchestrator tag,
// whose key may start with '@'). A key is non-empty, has no '=' (tags
// travel as key=value), and starts with '@' only when reserved; key and
// value are UTF-8 without control characters (NUL, newline, ...) and
// bounded. The control API refuses a bad label with the error; the Docker
// monitor, which cannot refuse a container, drops it and logs why.
func CheckLabel(key, value string, reserved bool) error {
	switch {
	case strings.TrimSpace(key) == "":
		return errors.New("empty key")
	case strings.Contains(key, "="):
		return fmt.Errorf("key %q contains '='", key)
	case !reserved && strings.HasPrefix(key, "@"):
		return fmt.Errorf("key %q: keys starting with '@' are reserved for trireme", key)
	case len(key) > MaxLabelKey:
		return fmt.Errorf("key of %d bytes (at most %d)", len(key), MaxLabelKey)
	case len(value) > MaxLabelValue:
		return fmt.Errorf("value of key %q: %d bytes (at most %d)", key, len(value), MaxLabelValue)
	}
	for what, s := range map[string]string{"key": key, "value": value} {
		if !utf8.ValidString(s) {
			return fmt.Errorf("%s %q is not UTF-8", what, s)
		}
		for _, r := range s {
			if r < 0x20 || r == 0x7f || (r >= 0x80 && r < 0xa0) {
				return fmt.Errorf("%s %q contains a control character (%U)", what, s, r)
			}
		}
	}
	return nil
}
