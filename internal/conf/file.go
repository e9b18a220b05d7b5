package conf

import (
	"bytes"
	"errors"
	"fmt"
	"os"
	"strings"

	"github.com/BurntSushi/toml"
)

// File is a config file read from disk, to decode into the sections'
// types and to report problems against.
type File struct {
	Path string
	data []byte
}

// ReadFile reads the config file at path.
func ReadFile(path string) (*File, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("config: %w", err)
	}
	return &File{Path: path, data: data}, nil
}

// Decode decodes the file into v, which holds the defaults of the keys the
// file leaves out. A syntax or type error is returned as "path:line key:
// reason"; each key that v has no field for is a problem ("unknown key")
// added to p.
func (f *File) Decode(v any, p *Problems) error {
	md, err := toml.Decode(string(f.data), v)
	if err != nil {
		var pe toml.ParseError
		if errors.As(err, &pe) {
			if pe.LastKey != "" {
				return fmt.Errorf("%s:%d %s: %s", f.Path, pe.Position.Line, pe.LastKey, pe.Message)
			}
			return fmt.Errorf("%s:%d: %s", f.Path, pe.Position.Line, pe.Message)
		}
		// Type mismatches come as "toml: line N (last key "K"): reason".
		var line int
		var key string
		msg := err.Error()
		if n, _ := fmt.Sscanf(msg, "toml: line %d (last key %q):", &line, &key); n == 2 {
			_, reason, _ := strings.Cut(msg, "): ")
			return fmt.Errorf("%s:%d %s: %s", f.Path, line, key, reason)
		}
		return fmt.Errorf("%s: %w", f.Path, err)
	}
	for _, k := range md.Undecoded() {
		p.Add(k.String(), "unknown key")
	}
	return nil
}

// Err returns the problems of p as "path:line key: reason" errors (the
// line left out for a key the file does not set), joined; nil without
// problems.
func (f *File) Err(p *Problems) error {
	if p.OK() {
		return nil
	}
	msgs := make([]error, len(p.List))
	for i, e := range p.List {
		if line := f.lineOf(e.Key); line > 0 {
			msgs[i] = fmt.Errorf("%s:%d %s: %s", f.Path, line, e.Key, e.Reason)
		} else {
			msgs[i] = fmt.Errorf("%s: %s: %s", f.Path, e.Key, e.Reason)
		}
	}
	return errors.Join(msgs...)
}

// lineOf finds the line (1-based) where a dotted key such as
// "limits.failures" or a table such as "bogus" is set, or 0. The config is
// flat (tables of scalars), so a scan of "[table]" headers and "key ="
// lines suffices.
func (f *File) lineOf(key string) int {
	table, name := "", key
	if i := strings.LastIndexByte(key, '.'); i >= 0 {
		table, name = key[:i], key[i+1:]
	}
	cur := ""
	for i, raw := range bytes.Split(f.data, []byte("\n")) {
		line := strings.TrimSpace(string(raw))
		if strings.HasPrefix(line, "[") {
			h := strings.TrimSpace(strings.Trim(line, "[]"))
			if h == key {
				return i + 1
			}
			cur = h
			continue
		}
		k, _, ok := strings.Cut(line, "=")
		if ok && cur == table && strings.Trim(strings.TrimSpace(k), `"`) == name {
			return i + 1
		}
	}
	return 0
}
