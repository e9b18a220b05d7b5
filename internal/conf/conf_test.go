package conf

import "testing"

// TestRedactURL: a password never shows, whether url.Parse reads the URL
// as having one or not (an unescaped "/", "?" or "#" in it, the "//" left
// out: the password once showed in the problem printed).
func TestRedactURL(t *testing.T) {
	for in, want := range map[string]string{
		"redis://user:s3cret@host:6379/0":    "redis://user:xxxxx@host:6379/0",
		"redis://:s3cret@host:6379":          "redis://:xxxxx@host:6379",
		"redis://user@host:6379":             "redis://user@host:6379",
		"redis://host:6379/0":                "redis://host:6379/0",
		"HTTP://Host:8080/":                  "HTTP://Host:8080/", // nothing to redact: as written
		"rediss://u:p@ss@h:6380":             "rediss://u:xxxxx@h:6380",
		"redis://u:pa ss@h":                  "redis://xxxxx@h", // url.Parse fails
		"redis://u:12/34@host:6379":          "redis://xxxxx@host:6379",
		"redis://u:12?34@host:6379":          "redis://xxxxx@host:6379",
		"redis://u:12#34@host:6379":          "redis://xxxxx@host:6379",
		"redis:user:s3cret@host:6379/0":      "xxxxx@host:6379/0",
		"redis:/user:s3cret@host":            "xxxxx@host",
		"redis:///user:s3cret@host":          "redis://xxxxx@host",
		"http:user:s3cret@127.0.0.1:8080":    "xxxxx@127.0.0.1:8080",
		"redis://u:p@h/x:s3cret@y":           "redis://xxxxx@y",
		"a:b:/c@h":                           "xxxxx@h",
		"x:y://s3cret@h":                     "xxxxx@h", // "x:y" is no scheme
		"redis://h:6379/0?client_name=a@b":   "redis://xxxxx@b",
		"redis://user:s3cret@[::1]:6379/0":   "redis://user:xxxxx@[::1]:6379/0",
		"redis://user:s3cret@host:6379/0#x@": "redis://xxxxx@",
	} {
		if got := RedactURL(in); got != want {
			t.Errorf("RedactURL(%q) = %q, want %q", in, got, want)
		}
	}
}
