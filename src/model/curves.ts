/**
 * The elliptic curves the service knows, by the DER of their CKA_EC_PARAMS: the one table both
 * threads read (key lookup, public keys, generation, import, descriptions).
 */
export interface Curve {
  /** DER of the named curve's OID (or, for some Edwards modules, its PrintableString name), hex. */
  params: string;
  /** The JOSE/NIST name, also the JWK `crv`. */
  name: 'P-256' | 'P-384' | 'P-521' | 'secp256k1' | 'Ed25519';
  /** Bytes of one ECDSA signature half (r or s); 0 for Edwards curves. */
  fieldBytes: number;
}

const KNOWN: Curve[] = [
  { params: '06082a8648ce3d030107', name: 'P-256', fieldBytes: 32 },
  { params: '06052b81040022', name: 'P-384', fieldBytes: 48 },
  { params: '06052b81040023', name: 'P-521', fieldBytes: 66 },
  // The Koblitz curve of Bitcoin and Ethereum keys (JOSE ES256K, RFC 8812).
  { params: '06052b8104000a', name: 'secp256k1', fieldBytes: 32 },
  { params: '06032b6570', name: 'Ed25519', fieldBytes: 0 },
  // Some modules name Edwards curves by a PrintableString instead of the OID.
  { params: '130c656477617264733235353139', name: 'Ed25519', fieldBytes: 0 },
];

const BY_PARAMS = new Map(KNOWN.map((c) => [c.params, c]));
/** The first entry of each name is the one written when creating a key. */
const BY_NAME = new Map([...KNOWN].reverse().map((c) => [c.name as string, c]));

export function curveByParams(paramsHex: string): Curve | undefined {
  return BY_PARAMS.get(paramsHex);
}

export function curveByName(name: string): Curve | undefined {
  return BY_NAME.get(name);
}
