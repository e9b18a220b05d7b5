// Package geotest writes small MaxMind-format databases for tests (with
// github.com/maxmind/mmdbwriter), so that no test downloads a database.
// Reserved networks (loopback, documentation prefixes) are allowed, so
// 127.0.0.x and PROXY-supplied 198.51.100.x / 2001:db8:: addresses map to
// test countries and ASNs. Only tests import it.
package geotest

import (
	"fmt"
	"net"
	"os"
	"strconv"

	"github.com/maxmind/mmdbwriter"
	"github.com/maxmind/mmdbwriter/mmdbtype"
)

// Country writes a country database to path: each CIDR of nets gets the
// ISO code it maps to.
func Country(path string, nets map[string]string) error {
	return write(path, "GeoLite2-Country", nets, func(v string) mmdbtype.DataType {
		return mmdbtype.Map{"country": mmdbtype.Map{"iso_code": mmdbtype.String(v)}}
	})
}

// ASN writes an ASN database to path: each CIDR of nets gets the AS number
// (decimal) it maps to.
func ASN(path string, nets map[string]string) error {
	return write(path, "GeoLite2-ASN", nets, func(v string) mmdbtype.DataType {
		n, _ := strconv.ParseUint(v, 10, 32)
		return mmdbtype.Map{"autonomous_system_number": mmdbtype.Uint32(n),
			"autonomous_system_organization": mmdbtype.String("Test AS " + v)}
	})
}

func write(path, kind string, nets map[string]string, val func(string) mmdbtype.DataType) error {
	tree, err := mmdbwriter.New(mmdbwriter.Options{DatabaseType: kind, IncludeReservedNetworks: true,
		DisableIPv4Aliasing: true, IPVersion: 6, RecordSize: 24})
	if err != nil {
		return fmt.Errorf("geotest: %w", err)
	}
	for cidr, v := range nets {
		_, n, err := net.ParseCIDR(cidr)
		if err != nil {
			return fmt.Errorf("geotest: %w", err)
		}
		if err := tree.Insert(n, val(v)); err != nil {
			return fmt.Errorf("geotest: insert %s: %w", cidr, err)
		}
	}
	f, err := os.Create(path)
	if err != nil {
		return fmt.Errorf("geotest: %w", err)
	}
	if _, err := tree.WriteTo(f); err != nil {
		f.Close()
		return fmt.Errorf("geotest: %w", err)
	}
	return f.Close()
}
