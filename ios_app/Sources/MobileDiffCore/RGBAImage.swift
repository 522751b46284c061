import Foundation
#if canImport(CoreGraphics)
import CoreGraphics
#endif

/// 8-bit RGBA pixels, row-major, alpha 255: what the app shows and saves.
public struct RGBAImage: Equatable, Sendable {
    public let width: Int
    public let height: Int
    /// `width * height * 4` bytes, R, G, B, A per pixel.
    public let pixels: [UInt8]

    /// The decoder output `[1, 3, H, W]` in [-1, 1] as the manifest's `pipeline.output`
    /// says: `round(clamp(x / 2 + 0.5, 0, 1) * 255)`, in float32 and rounding half to
    /// even like numpy, so the bytes equal Python's `to_uint8_image`. NaN becomes 0.
    public init(decoded: Tensor) throws {
        guard decoded.shape.count == 4, decoded.shape[0] == 1, decoded.shape[1] == 3 else {
            throw MobileDiffError.shapeMismatch(
                what: "decoder output", expected: [1, 3, decoded.shape.dropFirst(2).first ?? 0, decoded.shape.last ?? 0],
                actual: decoded.shape)
        }
        height = decoded.shape[2]
        width = decoded.shape[3]
        let plane = width * height
        var pixels = [UInt8](repeating: 255, count: plane * 4)
        for channel in 0 ..< 3 {
            for k in 0 ..< plane {
                pixels[k * 4 + channel] = RGBAImage.toUInt8(decoded.data[channel * plane + k])
            }
        }
        self.pixels = pixels
    }

    static func toUInt8(_ x: Float) -> UInt8 {
        let unit = x / 2 + 0.5
        if unit.isNaN { return 0 }
        return UInt8((min(max(unit, 0), 1) * 255).rounded(.toNearestOrEven))
    }

    /// The RGB bytes without alpha, `(H, W, 3)` like Python's image arrays.
    public var rgb: [UInt8] {
        var out: [UInt8] = []
        out.reserveCapacity(width * height * 3)
        for k in 0 ..< width * height { out += pixels[k * 4 ..< k * 4 + 3] }
        return out
    }

    #if canImport(CoreGraphics)
    /// The pixels as a CGImage, for SwiftUI and for saving.
    public var cgImage: CGImage? {
        guard let provider = CGDataProvider(data: Data(pixels) as CFData) else { return nil }
        return CGImage(
            width: width, height: height, bitsPerComponent: 8, bitsPerPixel: 32, bytesPerRow: width * 4,
            space: CGColorSpaceCreateDeviceRGB(), bitmapInfo: CGBitmapInfo(rawValue: CGImageAlphaInfo.noneSkipLast.rawValue),
            provider: provider, decode: nil, shouldInterpolate: false, intent: .defaultIntent)
    }
    #endif
}
