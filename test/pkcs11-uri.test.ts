/**
 * PKCS#11 URIs (RFC 7512): the parser reads every example of the RFC's section 3.3, and a config
 * may name its token and keys by URI; a URI with a PIN in it is refused there.
 */
import { describe, expect, it } from 'vitest';
import { parseConfig } from '../dist/src/index.js';
import { formatPkcs11Uri, keyOfUri, parsePkcs11Uri } from '../dist/src/model/pkcs11-uri.js';
import { deviceMismatch, moduleNameOf } from '../dist/src/model/device-match.js';

describe('the RFC 7512 section 3.3 examples', () => {
  const examples: [string, Record<string, string>, Record<string, string>][] = [
    ['pkcs11:', {}, {}],
    ['pkcs11:object=my-pubkey;type=public', { object: 'my-pubkey', type: 'public' }, {}],
    ['pkcs11:object=my-key;type=private?pin-source=file:/etc/token', { object: 'my-key', type: 'private' }, { 'pin-source': 'file:/etc/token' }],
    [
      'pkcs11:token=The%20Software%20PKCS%2311%20Softtoken;manufacturer=Snake%20Oil,%20Inc.;model=1.0;object=my-certificate;type=cert;id=%69%95%3E%5C%F4%BD%EC%91;serial=?pin-source=file:/etc/token_pin',
      { token: 'The Software PKCS#11 Softtoken', manufacturer: 'Snake Oil, Inc.', model: '1.0', object: 'my-certificate', type: 'cert', id: '69953e5cf4bdec91', serial: '' },
      { 'pin-source': 'file:/etc/token_pin' },
    ],
    ['pkcs11:object=my-sign-key;type=private?module-name=mypkcs11', { object: 'my-sign-key', type: 'private' }, { 'module-name': 'mypkcs11' }],
    ['pkcs11:object=my-sign-key;type=private?module-path=/mnt/libmypkcs11.so.1', { object: 'my-sign-key', type: 'private' }, { 'module-path': '/mnt/libmypkcs11.so.1' }],
    ['pkcs11:token=Software%20PKCS%2311%20softtoken;manufacturer=Snake%20Oil,%20Inc.?pin-value=the-pin', { token: 'Software PKCS#11 softtoken', manufacturer: 'Snake Oil, Inc.' }, { 'pin-value': 'the-pin' }],
    ['pkcs11:slot-description=Sun%20Metaslot', { 'slot-description': 'Sun Metaslot' }, {}],
    ['pkcs11:library-manufacturer=Snake%20Oil,%20Inc.;library-description=Soft%20Token%20Library;library-version=1.23', { 'library-manufacturer': 'Snake Oil, Inc.', 'library-description': 'Soft Token Library', 'library-version': '1.23' }, {}],
    ['pkcs11:token=My%20token%25%20created%20by%20Joe;library-version=3;id=%01%02%03%Ba%dd%Ef%0C;type=private;object=my-key', { token: 'My token% created by Joe', 'library-version': '3', id: '010203baddef0c', type: 'private', object: 'my-key' }, {}],
    ['pkcs11:token=A%20name%20with%20a%20substring%20%25%3B;object=my-certificate;type=cert', { token: 'A name with a substring %;', object: 'my-certificate', type: 'cert' }, {}],
    ['pkcs11:token=Name%20with%20a%20small%20A%20with%20acute:%20%C3%A1;object=my-certificate;type=cert', { token: 'Name with a small A with acute: á', object: 'my-certificate', type: 'cert' }, {}],
    ['pkcs11:token=my-token;object=my-certificate;type=cert;vendor-aaa=value-a?pin-source=file:/etc/token_pin&vendor-bbb=value-b', { token: 'my-token', object: 'my-certificate', type: 'cert', 'vendor-aaa': 'value-a' }, { 'pin-source': 'file:/etc/token_pin', 'vendor-bbb': 'value-b' }],
  ];
  for (const [uri, path, query] of examples) {
    it(uri, () => expect(parsePkcs11Uri(uri)).toEqual({ path, query }));
  }

  it('refuses what is not one', () => {
    for (const bad of ['pkcs12:object=x', 'pkcs11:object', 'pkcs11:object=a%2', 'pkcs11:object=a;object=b', 'pkcs11:object=with space']) expect(() => parsePkcs11Uri(bad), bad).toThrow();
  });

  it('formats what it parses back', () => {
    const uri = formatPkcs11Uri({ token: 'dev token', serial: '0af3', object: 'demo ec', id: '02ab', class: 'privateKey' });
    expect(uri).toBe('pkcs11:token=dev%20token;serial=0af3;object=demo%20ec;id=%02%AB;type=private');
    expect(parsePkcs11Uri(uri).path).toEqual({ token: 'dev token', serial: '0af3', object: 'demo ec', id: '02ab', type: 'private' });
  });
});

describe('URIs in the config', () => {
  const base = { modules: { soft: { path: '/usr/lib/softhsm/libsofthsm2.so' } } };
  it('names a token by URI (serial first, else label) and keys by URI', () => {
    const c = parseConfig({ ...base, slots: { s: { module: 'soft', token: 'pkcs11:token=dev-token', pin: { env: 'P' }, keys: { ec: 'pkcs11:object=demo-ec;id=%02;type=private' } }, t: { module: 'soft', token: 'pkcs11:token=x;serial=abc', pin: { env: 'P' } } } });
    expect(c.slots.s!.token).toEqual({ label: 'dev-token' });
    expect(c.slots.t!.token).toEqual({ serial: 'abc', on: { token: 'x' } });
    expect(c.slots.s!.keys.ec).toMatchObject({ label: 'demo-ec', id: '02' });
  });

  it('refuses a PIN in a URI, and a URI that names nothing usable, naming the field', () => {
    const attempt = (token: unknown, keys: unknown = {}) => () => parseConfig({ ...base, slots: { s: { module: 'soft', token, pin: { env: 'P' }, keys } } });
    expect(attempt('pkcs11:token=dev-token?pin-value=1234')).toThrow(/PIN never goes in the config/);
    expect(attempt('pkcs11:model=x')).toThrow(/neither token/);
    expect(attempt('pkcs11:token=t', { k: 'pkcs11:type=private' })).toThrow(/names its object/);
    expect(attempt('pkcs11:token=t', { k: 'pkcs11:object=k;pin-value=1234' })).toThrow(/PIN never goes in the config/);
    expect(attempt('pkcs11:token=t;x-vendor=1')).toThrow(/slots\.s\.token: "x-vendor" is not an attribute this supervisor knows, and a URI with one matches nothing/);
    expect(attempt('pkcs11:token=t', { k: 'pkcs11:objekt=k;id=%01' })).toThrow(/slots\.s\.keys\.k: "objekt" is not an attribute/);
  });
});

describe('what a URI names besides the object', () => {
  const key = (uri: string) => keyOfUri(parsePkcs11Uri(uri));
  const here = {
    token: 'dev-token', manufacturer: 'SoftHSM project', serial: '4db95fc29a3e64ee', model: 'SoftHSM v2',
    'slot-description': 'SoftHSM slot ID 0x1a3e64ee', 'slot-manufacturer': 'SoftHSM project', 'slot-id': '440296686',
    'library-manufacturer': 'SoftHSM', 'library-description': 'Implementation of PKCS11', 'library-version': '2.6',
    'module-name': 'softhsm2', 'module-path': '/usr/lib/softhsm/libsofthsm2.so',
  };

  it('keeps every token, slot, library and module attribute, in one order, the version as major.minor', () => {
    expect(key('pkcs11:object=k;library-version=2;token=t?module-name=m').on).toEqual({ token: 't', 'library-version': '2.0', 'module-name': 'm' });
    expect(Object.keys(key('pkcs11:slot-id=7;serial=s;object=k;manufacturer=m').on!)).toEqual(['manufacturer', 'serial', 'slot-id']);
    expect(key('pkcs11:object=k;serial=').on).toBeUndefined();
  });

  it('an attribute it does not know (a vendor one, a misspelt one) matches nothing, RFC 7512 2.5: refused, never dropped from what the URI asks', () => {
    for (const bad of ['pkcs11:object=k;type=private;vendor-x=1', 'pkcs11:id=%02;objekt=k', 'pkcs11:object=k?x-q=1', 'pkcs11:Object=k;id=%02']) expect(() => key(bad), bad).toThrow(/is not an attribute this supervisor knows/);
    expect(() => key('pkcs11:object=k;vendor-a=1?vendor-b=2')).toThrow(/^"vendor-a", "vendor-b" are not attributes/);
  });

  it('refuses a slot-id or library-version that cannot match anything', () => {
    for (const bad of ['pkcs11:object=k;slot-id=0x1a', 'pkcs11:object=k;slot-id=-1', 'pkcs11:object=k;library-version=two', 'pkcs11:object=k;library-version=1.2.3']) expect(() => key(bad), bad).toThrow();
  });

  it('matches only where every named attribute matches, trailing blanks aside (dropped when read, as the token pads)', () => {
    expect(key('pkcs11:object=k;token=dev-token%20%20').on).toEqual({ token: 'dev-token' });
    expect(deviceMismatch(undefined, here)).toBeNull();
    expect(deviceMismatch(key('pkcs11:object=k;token=dev-token;manufacturer=SoftHSM%20project%20%20;library-version=2.6?module-name=softhsm2').on, here)).toBeNull();
    expect(deviceMismatch(key('pkcs11:object=k;token=dev-token;slot-id=440296687').on, here)).toMatch(/slot-id "440296687"; this slot's is "440296686"/);
    expect(deviceMismatch(key('pkcs11:object=k;library-version=2').on, here)).toMatch(/library-version "2.0"/);
    expect(deviceMismatch(key('pkcs11:object=k?module-path=/usr/lib/other.so').on, here)).toMatch(/module-path/);
  });

  it('names a module as RFC 7512 does: no directory, no "lib", no extension', () => {
    expect(moduleNameOf('/usr/lib/softhsm/libsofthsm2.so')).toBe('softhsm2');
    expect(moduleNameOf('/usr/lib/x86_64-linux-gnu/opensc-pkcs11.so')).toBe('opensc-pkcs11');
    expect(moduleNameOf('/mnt/libmypkcs11.so.1')).toBe('mypkcs11');
    expect(moduleNameOf('/usr/lib/pkcs11/libtpm2_pkcs11.so.0.0.0')).toBe('tpm2_pkcs11');
  });

  it('a config token URI selects by serial or label and keeps the rest to match', () => {
    const c = parseConfig({ modules: { soft: { path: '/usr/lib/softhsm/libsofthsm2.so' } }, slots: { s: { module: 'soft', token: 'pkcs11:token=dev-token;model=SoftHSM%20v2', pin: { env: 'P' }, keys: { ec: 'pkcs11:token=dev-token;object=demo-ec' } } } });
    expect(c.slots.s!.token).toEqual({ label: 'dev-token', on: { model: 'SoftHSM v2' } });
    expect(c.slots.s!.keys.ec).toMatchObject({ label: 'demo-ec', on: { token: 'dev-token' } });
  });
});
